// Starts Swagger UI on the API reference page (/schema). A file of its own, served from our origin
// like Swagger UI itself, so that the page's Content-Security-Policy can be `script-src 'self'`
// with no inline script. The document's address comes from the page (data-openapi-url).
"use strict";

(function start() {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // Swagger UI's default sends the document to validator.swagger.io and shows its badge: no
    // outside requests from this page (it must work with no internet, under a same-origin CSP).
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
