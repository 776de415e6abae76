"""Training and compile questions: sources (bundled files, local files, hub datasets) read into graded records."""
