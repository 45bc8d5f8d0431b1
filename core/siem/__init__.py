"""Audit events to the SIEM, and anomaly alerts over the same stream (issue 17, items 2-3).

Every consumer of the audit log (a sink, the alert rules) owns a durable cursor: the `seq`
of the last audit row it acknowledged. It reads the rows after it, in `seq` order, hands a
batch over and moves the cursor only past what the receiver acknowledged. So delivery is
at-least-once and in order, nothing is lost while a receiver is down, and a restarted
deliverer resends nothing before its cursor. Sinks are operator-level: they carry every
tenant's rows (each row names its `tenant_id`).

- `models`: the `siem_cursors` table.
- `cursor`: reading rows after a cursor, moving it (compare-and-set), the lag.
- `document`: an audit row as one JSON document with ECS field names.
- `syslog`: RFC 5424 messages, RFC 6587 octet-counting framing, the TCP and TLS sink.
- `sinks`: the file (JSON lines) sink, the sink URLs of `Settings.siem_sinks`.
- `http_sinks`: Splunk HEC, Elasticsearch bulk, the alert webhook.
- `rules`: the anomaly rules (tumbling windows over the stream).
- `alerts`: the alert consumer: rules in, `alert` audit rows out, exactly once per window.
- `deliverer`: one consumer with its cursor and backoff; `SiemRunner`, all of them.
- `status`: the lag of every consumer (CLI, Admin tab).

This `__init__` only documents: import the submodules themselves.
"""
