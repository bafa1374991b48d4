"""Generated gRPC stubs of the Open Inference Protocol (``make proto``); not linted."""
