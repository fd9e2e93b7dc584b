# Turns a text file into a C header holding it as one string constant (used for the Redis Function library).
file(READ ${IN} content)
string(REPLACE "\\" "\\\\" content "${content}")
string(REPLACE "\"" "\\\"" content "${content}")
string(REPLACE "\n" "\\n\"\n\"" content "${content}")
file(WRITE ${OUT} "/* Generated from daemon/vdispatch.lua; do not edit. */\nstatic const char vd_lua_library[] =\n\"${content}\";\n")
