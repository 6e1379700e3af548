"""mcgenref_fast.io"""
