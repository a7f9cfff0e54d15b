"""TODO synthetic"""
