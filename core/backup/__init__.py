"""Backup and restore of one install (`tenantllm backup` / `tenantllm restore`).

- `create`: `create_backup(settings, out)`, the archive of the database and the data dir;
- `restore`: `restore_backup(settings, archive)`, into an empty data dir and database only;
- `archive`: the tar.gz layout, checksums, safe member names;
- `manifest`: what an archive holds and the MAC over it (under the master key);
- `database`: the logical dump (JSON lines per table, by reflection, both backends);
- `datafiles`: which data dir files are state, and their consistent copies.

The master key is never written by a backup when it is a setting (TENANTLLM_MASTER_KEY):
restore then needs the same setting. A development install's `master.key` is a data dir file
and travels in the archive.
"""
