"""shm-vla: a real-time Vision-Language-Action inference runtime over shared-memory rings."""
__version__ = "0.1.0"
