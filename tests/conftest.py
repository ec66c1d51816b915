import os

# Triton kernels run on CPU tensors through the interpreter in the normal suite; this must be set before any
# Triton kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ATTNZOO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
