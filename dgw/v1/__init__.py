"""Generated from protos/dgw/v1/gateway.proto by protos/generate.sh; do not edit."""
