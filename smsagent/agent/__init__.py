"""The control loop: schedule, state machine, durable state, handler registry."""
