"""The run report (`harness report`) and run comparison (`harness compare`).

run_folder reads a run folder; stats, online_lines and eval_metrics compute what is shown; sections build the
report's parts, plots its figures and render writes markdown and HTML; report assembles them. compare and run_facts
set runs side by side, papers holds the published numbers, summary prints a written report to the terminal.
"""
