#!/bin/sh
# CGI behind GET / of the numbers-web stand-in: asks the API for a number (server
# side, like the real app) and names the pod that served the page. The API URL comes
# from RngApi__Url when set (as in the real app's configuration), else numbers-api.
url=${RngApi__Url:-http://numbers-api/rng}
if number=$(timeout 5 wget -q -O - "$url" 2>/dev/null) && [ -n "$number" ]; then
    result="Here it is: <b>$number</b>"
else
    result="RNG service unavailable! (could not fetch $url)"
fi
printf 'Content-Type: text/html\r\n\r\n'
cat <<HTML
<!DOCTYPE html>
<html><head><title>Kiamol Random Number Generator</title></head>
<body>
<h1>Kiamol Random Number Generator</h1>
<p>$result</p>
<p>Served by pod: $(hostname)</p>
</body></html>
HTML
