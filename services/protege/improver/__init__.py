"""improver"""
