"""Deploy desires made real: the artifact index and the version sets it pins, capacity
plans from Netflix's planner, and phased rollouts by tier (issue #21).

- ``artifacts``: artifacts, builds and refs, and the pure resolution of a shard's
  ``version_set`` to immutable references (``Pin``); ``index``: the artifact index
  in the config store;
- ``pins``: what the server stores beside each shard version (the pins it was
  resolved to) and the change path's resolver;
- ``planning``: capacity desires → the planner's inputs and its plan → ours (pure);
  ``plan_worker``: plans computed off the event loop, in a worker process, cached;
- ``rollout``: waves, the pure step function, the reconcile loop that acts on it.
"""
