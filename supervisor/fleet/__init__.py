"""Fleet tools: the simulator on the real decision engine, and the window planner."""
