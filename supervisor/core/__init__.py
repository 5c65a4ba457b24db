"""The pure decision core: durations, slots, the state's values and transitions, the policy,
Docker's facts reconciled. No clock, no files, no network: everything is an argument."""
