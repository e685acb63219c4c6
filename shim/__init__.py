"""modelrunner.shim"""
