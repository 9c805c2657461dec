"""The router: every service reachable at its hosts through a Caddy each router supervises.

:mod:`.table` computes the route table from the key tree (pure), :mod:`.caddy` turns it into
Caddy's JSON config and runs Caddy, :mod:`.daemon` ties them to informers (``lastbackend
router``). It imports the informer from ``store``, nothing above ``controllers``, never from
``node`` or ``api``.
"""
