"""Reward functions shared by several environments."""
