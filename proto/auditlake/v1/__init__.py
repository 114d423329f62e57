"""Generated protobuf and gRPC modules for auditlake.v1 (``make proto``)."""
