"""The provider's side: tools that play the game provider against any wallet (the signed client,
the simulator and its launch API, the conformance kit).

It may import `gateway.signing` and `gateway.schemas`; the gateway never imports it (only the
CLI, the composition root, names its tools).
"""
