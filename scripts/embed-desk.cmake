# Turns the desk's page (daemon/desk/desk.html, desk.js, desk.css) into a C header: each file
# as one string constant, served by daemon/vd_desk.c. Nothing of the page comes from elsewhere.
set(header "/* Generated from daemon/desk/; do not edit. */\n")
foreach(pair "html;desk.html" "js;desk.js" "css;desk.css")
  list(GET pair 0 name)
  list(GET pair 1 file)
  file(READ ${IN_DIR}/${file} content)
  string(REPLACE "\\" "\\\\" content "${content}")
  string(REPLACE "\"" "\\\"" content "${content}")
  string(REPLACE "\n" "\\n\"\n\"" content "${content}")
  string(APPEND header "static const char vd_desk_${name}[] =\n\"${content}\";\n")
endforeach()
file(WRITE ${OUT} "${header}")
