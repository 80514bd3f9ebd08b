"""Pipeline stages as library modules: each takes what earlier stages produced, does its work,
records it in the run registry and returns a typed result; pipeline.py only calls them."""
