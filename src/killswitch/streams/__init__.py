"""User-data streams: the supervisor (subscribe, snapshot, reconcile) and the order tracker."""
