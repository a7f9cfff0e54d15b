"""TODO survey"""
