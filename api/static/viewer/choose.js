// Picks the viewer before anything else loads: a wide screen with a mouse goes on to OHIF (when the server
// offered it, in data-desk); a phone or a tablet stays on the touch viewer. ?ui=phone keeps anyone here.
(function () {
  var desk = document.documentElement.getAttribute("data-desk");
  if (!desk) return;
  var wide = window.matchMedia("(min-width: 1000px) and (pointer: fine)").matches;
  if (wide) window.location.replace(desk);
})();
