"""Adversarial tests, one module per failure kind (issues 13 and 14).

Each module is a matrix over every front end and client the kind can reach:
JSON, the binary extension, gRPC typed and raw contents, LocalBackend,
RemoteBackend (HTTP and gRPC) and the edge gateway. Fixtures shared by
several kinds live here.
"""
