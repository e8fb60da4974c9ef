"""The HTTP API actor: the route table and handlers (`app`, on the `handler` base), the raw
fast paths (`fastpath`, `fastread`), the operations they share (`ops`), the node they talk to
(`node`, `bridge`), errors and outcomes.

Import the submodules directly (`actors.api.app.make_app`, `actors.api.node.FakeNodeClient`);
this package module stays empty so that importing one never drags in the others. The
submodules import each other without a cycle (tests/unit/test_api_imports.py).
"""
