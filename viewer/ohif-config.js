/** StudyPublicator's configuration of the prebuilt OHIF (served under /ohif/): one study at a time from the
 * patient's link, through the DICOM JSON data source (the manifest /s/<key>/view/manifest.json, same origin);
 * no study list, no other data source, no upload, no dynamic configuration, no customization URLs, no
 * service worker, nothing sent anywhere else, no OHIF branding or links out. The language comes from the
 * link page (?lng= in the address, set by the service).
 *
 * A function rather than an object: OHIF calls it before it loads its plugins, which lets it load only what
 * the one route we use (/viewer, the basic viewer) needs. The prebuilt app imports every mode it was built
 * with (segmentation, TMTV, microscopy, 4D, ultrasound...) and their extensions at start: each is script to
 * fetch, parse and run before the first image. OHIF reads the config's own fields from the returned object. */
(function () {
  'use strict';

  // What the /viewer route (mode-longitudinal, built on mode-basic) needs; the mode loads its own
  // extension dependencies (measurement tracking, SR, SEG, RT, PDF, video) when it is created.
  var KEEP = {
    modes: ['@ohif/mode-longitudinal'],
    extensions: ['@ohif/extension-default', '@ohif/extension-cornerstone'],
  };

  function aboutWithoutLinks() {
    return 'OHIF Viewer 3.13.2 (MIT License)';
  }
  aboutWithoutLinks.title = 'OHIF Viewer';

  var config = {
    name: 'studypub',
    routerBasename: '/ohif',
    extensions: [],
    modes: [],
    customizationService: {
      global: {
        // OHIF's About box links to GitHub and ohif.org: a line of text instead.
        'ohif.aboutModal': { $set: aboutWithoutLinks },
      },
    },
    whiteLabeling: {
      // No OHIF logo (it links to ohif.org): an empty mark of the same height.
      createLogoComponentFn: function (React) {
        return React.createElement('span', { className: 'inline-block h-[22px]', 'data-cy': 'studypub-logo' });
      },
    },
    showStudyList: false,
    // The manifest carries no patient name or ID (the archive is anonymised): OHIF would say "Multiple Patients".
    showPatientInfo: 'disabled',
    investigationalUseDialog: { option: 'never' },
    maxNumberOfWebWorkers: 2,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    allowMultiSelectExport: false,
    maxNumRequests: { interaction: 100, thumbnail: 6, prefetch: 12 },
    showErrorDetails: 'production',
    defaultDataSourceName: 'dicomjson',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomjson',
        sourceName: 'dicomjson',
        configuration: {
          friendlyName: 'StudyPublicator',
          name: 'json',
          dicomUploadEnabled: false,
        },
      },
    ],
    httpErrorHandler: function (error) {
      console.warn(error.status);
    },
  };

  window.config = function () {
    // OHIF's plugin lists (window.modes, window.extensions) are the arrays it is about to load from.
    Object.keys(KEEP).forEach(function (name) {
      var list = window[name];
      if (Array.isArray(list)) {
        var kept = list.filter(function (id) {
          return KEEP[name].indexOf(id) !== -1;
        });
        list.splice.apply(list, [0, list.length].concat(kept));
      }
    });
    return config;
  };
})();
