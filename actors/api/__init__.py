"""The HTTP API actor: Tornado handlers (`app`), the node it talks to (`node`), errors.

Import the submodules directly (`actors.api.app.make_app`, `actors.api.node.FakeNodeClient`);
this package module stays empty so that importing one never drags in the others.
"""
