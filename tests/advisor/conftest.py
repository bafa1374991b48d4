from __future__ import annotations

from ..routing.conftest import zoo_server

__all__ = ["zoo_server"]
