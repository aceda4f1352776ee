"""Process meshes and explicit process groups for the learner (see `mesh.py`)."""

from engine.parallel.mesh import Mesh

__all__ = ["Mesh"]
