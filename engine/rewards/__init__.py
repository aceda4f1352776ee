"""Rewards: math (math-verify, `engine.rewards.math`); reward model, judge and router live beside it."""
