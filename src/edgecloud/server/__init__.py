"""The remote tier: an Open Inference Protocol server (HTTP + gRPC) over a model repository.

Needs the ``server`` extra. Entry point: ``edgecloud serve`` or
:func:`edgecloud.server.app.serve`.
"""
