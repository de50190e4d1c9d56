"""Generated from protos/dgw_api/v1/gateway.proto by protos/generate.sh; do not edit."""
