"""The whole-system lab: a real broker, emulated nodes, the gateway, line noise and a
verifying consumer, composed for hil_tests/ and for citysense-demo."""
