"""The pure decision core: durations, slots, the state's values and transitions, the policy,
Docker's facts reconciled, the agent's option-name rule. No clock, no files, no network:
everything is an argument."""
