#!/usr/bin/env python3
"""test/metrics/method_branches.py FILE.c - how many functions of a C file reference a method
option or flag (LoRA, DoRA, (IA)^3, BitFit, bottleneck, prompt, prefix fields, PEFT_METHOD_*)."""
import re,sys
src=open(sys.argv[1]).read().split('\n')
pat=re.compile(r'opts\.(lora|dora|ia3|bitfit|bottleneck|prompt_tokens|prefix_tokens)|o->(lora|dora|ia3|bitfit|bottleneck|prompt_tokens|prefix_tokens)|has_lora\(|->prompt\b|->prefix\b|PEFT_METHOD_')
funcs=0; branching=0; names=[]
i=0
while i<len(src):
    m=re.match(r'^([A-Za-z_][A-Za-z0-9_]*)\(',src[i])
    if m:
        j=i
        while j<len(src) and src[j]!='{' and not src[j].endswith(';'): j+=1
        if j<len(src) and src[j]=='{':
            k=j+1
            while k<len(src) and src[k]!='}': k+=1
            funcs+=1
            body='\n'.join(src[j:k])
            if pat.search(body): branching+=1; names.append(m.group(1))
            i=k
    i+=1
print(f"{branching} of {funcs} functions reference method options")
