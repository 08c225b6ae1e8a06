"""LORAID Studio engine: everything the app does, usable from the command line without Gradio.

Importing it asks PyTorch's CUDA allocator for expandable segments (unless PYTORCH_CUDA_ALLOC_CONF is set already):
large models under a memory cap then lose far less memory to fragmentation."""
import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
