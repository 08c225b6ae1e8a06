"""LORAID Studio engine: everything the app does, usable from the command line without Gradio."""
