"""TODO inputs"""
