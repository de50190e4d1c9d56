"""Generated from protos/dgw/migration/v1/migration.proto by protos/generate.sh."""
