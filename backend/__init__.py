"""LORAID Studio's engine. Importing it asks PyTorch's CUDA allocator for expandable segments (unless the user set
PYTORCH_CUDA_ALLOC_CONF): large models under a memory cap then lose far less memory to fragmentation."""
import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
