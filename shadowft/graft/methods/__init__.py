"""Graft methods: how an update is combined with Instruct (see `base.GraftMethod`)."""
