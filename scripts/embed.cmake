# Turns the Redis Function library into a C header: its text as one string constant, and its
# name and version from the first line ("#!lua name=vdispatch_<N>"; functions are vd<N>_*).
file(READ ${IN} content)
string(REGEX MATCH "^#!lua name=vdispatch_([0-9]+)" first "${content}")
if(NOT first)
  message(FATAL_ERROR "${IN}: the first line must be '#!lua name=vdispatch_<version>'")
endif()
set(version ${CMAKE_MATCH_1})
string(REGEX MATCHALL "register_function[^\n]*'vd[0-9]+_" registered "${content}")
foreach(r ${registered})
  if(NOT r MATCHES "'vd${version}_$")
    message(FATAL_ERROR "${IN}: every function name must start with vd${version}_ (found: ${r})")
  endif()
endforeach()
string(REPLACE "\\" "\\\\" content "${content}")
string(REPLACE "\"" "\\\"" content "${content}")
string(REPLACE "\n" "\\n\"\n\"" content "${content}")
file(WRITE ${OUT} "/* Generated from daemon/vdispatch.lua; do not edit. */\n"
  "#define VD_LIB_VERSION ${version}\n"
  "#define VD_LIB_NAME \"vdispatch_${version}\"\n"
  "/* The name of one of the library's functions: VD_FN(\"admit\") is \"vd${version}_admit\". */\n"
  "#define VD_FN(name) \"vd${version}_\" name\n"
  "static const char vd_lua_library[] =\n\"${content}\";\n")
