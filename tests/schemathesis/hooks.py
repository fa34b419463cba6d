"""Schemathesis hooks for remapd's contract test: policy components are raw bytes
(`application/wasm`), sent as they are."""
import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")
