#!/usr/bin/env python3
"""test/metrics/function_lengths.py FILE.c ... - the longest C functions (PostgreSQL layout:
name at column 0, body from a '{' to a '}' at column 0), longest first; TOP=N rows (10)."""
import sys, re, glob
res=[]
for f in sys.argv[1:]:
    lines=open(f,errors='replace').read().split('\n')
    i=0
    while i < len(lines):
        m=re.match(r'^([A-Za-z_][A-Za-z0-9_]*)\(', lines[i])
        if m and i+1 < len(lines):
            # find body start
            j=i
            while j < len(lines) and lines[j] != '{' and not lines[j].endswith(';'):
                j+=1
            if j < len(lines) and lines[j] == '{':
                k=j+1
                while k < len(lines) and lines[k] != '}':
                    k+=1
                res.append((k-j+1, f, m.group(1), i+1))
                i=k
        i+=1
res.sort(reverse=True)
for n,f,name,line in res[:int(__import__('os').environ.get('TOP','10'))]:
    print(f"{n:5d} {f}:{line} {name}")
