"""Data migrations between two DALs (issue #20): the runner that copies (``backfill``)
and compares (``verify``) over the DAL migration contract (``dal_client``), keeping its
state through ``state.MigrationState``."""
