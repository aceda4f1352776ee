"""Process meshes and explicit process groups for the learner (see `mesh.py`), and the device /
backend choice they are built on (see `device.py`)."""

from engine.parallel.device import DeviceError, backend_for, local_rank, resolve_device
from engine.parallel.mesh import Mesh

__all__ = ["DeviceError", "Mesh", "backend_for", "local_rank", "resolve_device"]
