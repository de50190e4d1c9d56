"""Generated from protos/dals/kv/v1/kv.proto by protos/generate.sh; do not edit."""
