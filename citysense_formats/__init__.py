"""File and wire formats shared by the gateway, provisioning, the lab and the tests.

Pure: every function parses or builds bytes/str; no files, sockets, clocks or asyncio,
with one exception, `durable.replace_file` (the crash-safe replace of a small state file
that gateway, cloud and provisioning share).
Each format has one module and one error type (a `ValueError` subclass whose message
says what is wrong, never who is reading; callers add the file name and what to do):

- `devid`: the device-id rule (registry file names, MQTT topic levels, COSE kids).
- `registry_entry`: one `<device_id>.json` of the device registry; `key_id()`.
- `operator_key`: the operator's public key, 64 hex chars or an Ed25519 PEM.
- `node_config`: the node's `config/device.json`: defaults and limits as data.
- `state_seq`: the node's `/state/seq` file (u64 LE || crc32 LE).
- `bundle`: the firmware bundle (`*.csb`): signed manifest + app files; `BundleError.reason`.
- `ota_topics`: where bundles travel over MQTT, and the gateway's report on each one.
- `durable`: `replace_file` (temp + fsync + rename + folder fsync), the one file write.

The firmware keeps its own MicroPython copies of the node-side rules;
tests/node/test_formats_cross.py holds the two against each other.
"""
