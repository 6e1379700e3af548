"""mcgenref_fast.models"""
