"""The HTTP edge and the cross-cutting concerns: config, CLI, errors, streaming."""
