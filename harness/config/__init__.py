"""The recipe schema: typed, validated sections (pydantic + YAML), the lowest layer; it imports no other layer but
the method configs its strategy union names (`strategies.py`)."""
